"""The config keys the method documents name exist in the config of their method.

Every dotted config path written in backticks in docs/{sbe,cdsp,webcoseg,coseg,reproduce}.md (`method.walk.bg_thres`,
`method.cam.eval_thres: 0.21`, `--set eval.crf=null`, `method.loss.*`), every key after ``--set`` in their fenced
shell blocks, and every key of their fenced YAML blocks must resolve, attribute by attribute, in the loaded config of
a preset of the method the document belongs to (weakseg.engine.config.load_config on configs/<method>/*.yaml). A key
renamed in the code then fails here with the document, the line and the key. Only tokens that start with a
top-level section (data., model., method., optim., schedule., engine., eval.) count as config paths; module paths
such as `weakseg.data.saliency` or file names such as `model_final.pth` do not.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from pathlib import Path

import pytest
import yaml

from weakseg.engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = ROOT / "docs"
CONFIGS = ROOT / "configs"

#: document → the methods (preset folders under configs/) whose config its keys belong to
DOCS = {
    "sbe.md": ("sbe", "bes"),
    "cdsp.md": ("cdsp",),
    "webcoseg.md": ("webcoseg",),
    "coseg.md": ("webcoseg",),
    "reproduce.md": ("blpseg", "full", "partial_ce", "sbe", "bes", "cdsp", "webcoseg"),
}
#: documents that must name at least this many keys (so that a broken extraction cannot pass silently)
MIN_KEYS = {"sbe.md": 40, "cdsp.md": 15, "webcoseg.md": 15, "reproduce.md": 8}

SECTIONS = ("data", "model", "method", "optim", "schedule", "engine", "eval")
# a config path: a top-level section, then dotted names (a trailing ``.*`` stands for "any key of this section");
# not preceded by a name character, a dot, a slash or a dash (``weakseg.data.x``, ``engine/pipeline.py``)
KEY = re.compile(r"(?<![\w./$-])(?:%s)(?:\.(?:[A-Za-z_]\w*|\*(?![\w*])))+" % "|".join(SECTIONS))
FENCE = re.compile(r"^\s*(```|~~~)\s*(\w*)")
SPAN = re.compile(r"`([^`]+)`")
SET_ARG = re.compile(r"--set\s+['\"]?")


# ----------------------------------------------------------------------------------------------------------------
# extraction


def _blocks(text: str) -> tuple[str, list[tuple[str, int, list[str]]]]:
    """(the text with fenced blocks blanked out, line count kept; [(language, first line number, lines)])."""
    prose, blocks = [], []
    current = None
    for number, line in enumerate(text.split("\n"), 1):
        fence = FENCE.match(line)
        if current is None and fence:
            current = (fence.group(2).lower(), number + 1, [])
            prose.append("")
        elif current is not None and fence and not fence.group(2):
            blocks.append(current)
            current = None
            prose.append("")
        elif current is not None:
            current[2].append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def _yaml_keys(data, lines: list[str], first: int, prefix: str = "", start: int = 0) -> list[tuple[int, str]]:
    """``[(line, dotted path)]`` of a YAML mapping, every level; a key's line is the first line at or after its
    parent's that names it."""
    out = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("_base_", "..."):
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            name = re.compile(r"(^|[{,\s])" + re.escape(str(key)) + r"\s*:")
            at = next((i for i in range(start, len(lines)) if name.search(lines[i])), start)
            out.append((first + at, path))
            out += _yaml_keys(value, lines, first, path, at)
    return out


def find_keys(text: str) -> list[tuple[int, str, bool]]:
    """``[(line, dotted key, from_yaml)]`` named in a Markdown text: inline code spans, ``--set KEY=...`` in fenced
    shell blocks, and the keys of fenced YAML blocks whose top level is a config section."""
    prose, blocks = _blocks(text)
    found = []
    for span in SPAN.finditer(prose):
        if "\n\n" in span.group(1):  # code spans do not cross paragraphs: an unpaired backtick
            continue
        for m in KEY.finditer(span.group(1)):
            found.append((prose.count("\n", 0, span.start(1) + m.start()) + 1, m.group(0), False))
    for language, first, lines in blocks:
        if language in ("yaml", "yml"):
            try:
                data = yaml.safe_load("\n".join(lines))
            except yaml.YAMLError:
                data = None
            if isinstance(data, dict) and set(data) & set(SECTIONS):
                found += [(line, key, True) for line, key in _yaml_keys(data, lines, first)
                          if key.split(".")[0] in SECTIONS]
        else:
            for i, line in enumerate(lines):
                for arg in SET_ARG.finditer(line):
                    m = KEY.match(line, arg.end())
                    if m:
                        found.append((first + i, m.group(0), False))
    return sorted(found)


# ----------------------------------------------------------------------------------------------------------------
# resolution


@functools.lru_cache(maxsize=None)
def method_configs(method: str) -> tuple:
    """The loaded configs of every preset of ``method`` (configs/<method>/*.yaml)."""
    presets = sorted((CONFIGS / method).glob("*.yaml"))
    assert presets, f"no presets under configs/{method}/"
    return tuple(load_config(p) for p in presets)


def _names(node) -> list[str]:
    if dataclasses.is_dataclass(node):
        return [f.name for f in dataclasses.fields(node)]
    return list(node) if isinstance(node, dict) else []


def resolve(cfg, key: str, from_yaml: bool = False) -> str | None:
    """None when ``key`` resolves in ``cfg`` (dataclass fields, then mapping keys); otherwise why not. A YAML key
    below a free-form mapping field (``lr_mult``, ``head_kwargs``) resolves once that field does."""
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part == "*":
            last = i == len(parts) - 1
            return None if last and (dataclasses.is_dataclass(node) or isinstance(node, dict)) else \
                f"{'.'.join(parts[:i])}.* is not a section"
        if from_yaml and isinstance(node, dict) and i > 0 and not dataclasses.is_dataclass(node):
            return None  # a free-form mapping value written out in the document
        names = _names(node)
        if part not in names:
            where = ".".join(parts[:i]) or "the config"
            if not names:
                return f"{where} is a value, not a section"
            close = difflib.get_close_matches(part, names, n=1)
            return f"{where} has no {part!r}" + (f" (closest: {close[0]!r})" if close else "")
        node = getattr(node, part) if dataclasses.is_dataclass(node) else node[part]
    return None


def problems(doc: str, text: str, methods: tuple[str, ...]) -> list[str]:
    """One line per key of ``text`` that resolves in no preset of ``methods``: document, line, key and why."""
    configs = [cfg for method in methods for cfg in method_configs(method)]
    out = []
    for line, key, from_yaml in find_keys(text):
        reasons = [resolve(cfg, key, from_yaml) for cfg in configs]
        if all(reasons):
            out.append(f"docs/{doc}:{line}: `{key}` is not a config key of {'/'.join(methods)} ({reasons[0]})")
    return out


# ----------------------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("doc", list(DOCS))
def test_doc_config_keys_exist(doc):
    path = DOCS_DIR / doc
    if not path.is_file():
        pytest.skip(f"docs/{doc} does not exist")
    text = path.read_text(encoding="utf-8")
    keys = find_keys(text)
    assert len(keys) >= MIN_KEYS.get(doc, 0), f"docs/{doc}: only {len(keys)} config keys found"
    bad = problems(doc, text, DOCS[doc])
    assert not bad, "stale config keys in the docs:\n" + "\n".join(bad)


def test_extraction_takes_config_paths_only():
    text = ("See `weakseg.data.saliency`, `methods.md`, `model_final.pth`, `engine/pipeline.py` and\n"
            "`<w>/eval_init/metrics.json`; set `method.walk.bg_thres: 0.8`, `--set eval.crf=null` or\n"
            "`method.loss.*`; a span over two lines: `--set\n'eval.scales=[1.0]'`.\n\n"
            "```bash\nweakseg run C --set data.root=/x --set 'model.backbone_options={a: 1}'  # not method.x\n```\n"
            "```yaml\nmethod:\n  walk: {bg_thres: 0.3}\n```\n")
    assert [(line, key) for line, key, _ in find_keys(text)] == [
        (2, "eval.crf"), (2, "method.walk.bg_thres"), (3, "method.loss.*"), (4, "eval.scales"),
        (7, "data.root"), (7, "model.backbone_options"), (10, "method"), (11, "method.walk"),
        (11, "method.walk.bg_thres")]


def test_a_stale_key_is_reported_with_doc_line_and_key():
    text = ("The old flat keys:\n\n"
            "argmax([`cam_eval_thres`, CAMs]); `method.cam.eval_thres` is right,\n"
            "`method.cam_eval_thres` and `method.walk.sem_seg_bg_thres` are not, nor `optim.nope.x`.\n")
    bad = problems("sbe.md", text, DOCS["sbe.md"])
    assert len(bad) == 3, bad
    assert bad[0].startswith("docs/sbe.md:4: `method.cam_eval_thres` is not a config key of sbe/bes")
    assert "`method.walk.sem_seg_bg_thres`" in bad[1] and "closest: 'bg_thres'" in bad[1]
    assert "`optim.nope.x`" in bad[2]
