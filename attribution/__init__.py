"""Attribution: touchpoints before conversions, the attribution models, campaign costs and
the ROI report. Other packages record conversions through `record_conversion`."""

from attribution.db_models import ConversionKind
from attribution.service import record_conversion

__all__ = ["ConversionKind", "record_conversion"]
