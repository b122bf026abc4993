"""The stage kit: declarations, typed sections and the shared stages multi-stage methods list.

    stage.py     TrainStage / PerImageStage / EvalStage, StageContext, TrainJob, common config paths
    sections.py  TrainSection, CAMSection: typed per-stage config sections
    cam.py       train_cam → make_cam → eval_cam
    saliency.py  make_saliency (U²-Net-p)
    seg.py       train_seg (the method's own network on a stage's masks) → evaluate
    score.py     scoring of per-image masks on the training split

See docs/architecture.md, "How to add a multi-stage method".
"""

from weakseg.methods.kit.cam import MAP_STRIDE, CAMTraining, build_cam_net, cam_stages, load_cams
from weakseg.methods.kit.saliency import saliency_stage
from weakseg.methods.kit.score import score_labels, score_masks_stage
from weakseg.methods.kit.sections import CAMSection, TrainSection
from weakseg.methods.kit.seg import build_final_method, evaluate_stage, run_train_transforms, train_seg_stage
from weakseg.methods.kit.stage import (DATA_IMAGES, DATA_TAGS, DATA_TRAIN_GT, RUN_EVAL, RUN_TRAINING, EvalStage,
                                       PerImageStage, Stage, StageContext, TrainJob, TrainStage, get_path,
                                       section_paths)

__all__ = ["CAMSection", "CAMTraining", "DATA_IMAGES", "DATA_TAGS", "DATA_TRAIN_GT", "EvalStage", "MAP_STRIDE",
           "PerImageStage", "RUN_EVAL", "RUN_TRAINING", "Stage", "StageContext", "TrainJob", "TrainSection",
           "TrainStage", "build_cam_net", "build_final_method", "cam_stages", "evaluate_stage", "get_path",
           "load_cams", "run_train_transforms", "saliency_stage", "score_labels", "score_masks_stage", "section_paths",
           "train_seg_stage"]
