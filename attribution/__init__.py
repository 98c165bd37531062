"""Attribution: touchpoints before conversions, the attribution models, campaign costs and
the ROI report. Other packages record conversions through `record_conversion` (deals) and
`record_milestones` (leads and MQLs, from lifecycle transitions) and read a
contact's credited channels through `channel_credits_for_contact` and its touches and
credit shares through `contact_attribution`."""

from attribution.contact import contact_attribution
from attribution.db_models import ConversionKind
from attribution.service import (
    ChannelCredit,
    channel_credits_for_contact,
    follow_merge,
    record_conversion,
    record_milestones,
)

__all__ = [
    "ChannelCredit",
    "ConversionKind",
    "channel_credits_for_contact",
    "contact_attribution",
    "follow_merge",
    "record_conversion",
    "record_milestones",
]
