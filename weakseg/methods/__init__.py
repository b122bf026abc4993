"""Method table: name → class. The engine reaches methods only through this plain dict."""

from weakseg.methods.base import Method
from weakseg.methods.full import FullSupervision
from weakseg.methods.partial_ce import PartialCE

METHODS: dict[str, type[Method]] = {
    "full": FullSupervision,
    "partial_ce": PartialCE,
}

__all__ = ["METHODS", "Method"]
