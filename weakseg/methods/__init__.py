"""Method table: name → class. The engine reaches methods only through this plain dict."""

from weakseg.methods.base import Method
from weakseg.methods.blpseg import BLPSeg
from weakseg.methods.cdsp import CDSP
from weakseg.methods.full import FullSupervision
from weakseg.methods.partial_ce import PartialCE
from weakseg.methods.sbe import BES, SBE
from weakseg.methods.webcoseg import WebCoseg

METHODS: dict[str, type[Method]] = {
    "full": FullSupervision,
    "partial_ce": PartialCE,
    "blpseg": BLPSeg,
    "bes": BES,
    "sbe": SBE,
    "cdsp": CDSP,
    "webcoseg": WebCoseg,
}

__all__ = ["METHODS", "Method"]
