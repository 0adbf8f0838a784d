"""Names of the Dagster run tags this platform sets: one prefix, ``taxi/``, so they group in the UI's run
filters and never collide with Dagster's own ``dagster/`` tags."""

TAG_PREFIX = "taxi/"

MONTH_TAG = f"{TAG_PREFIX}month"  # the TLC month a release-sensor or safety-net run ingests (YYYY-MM)
RELEASE_TAG = f"{TAG_PREFIX}release"  # why it runs: new, republished, retry, safety-net
ATTEMPT_TAG = f"{TAG_PREFIX}attempt"  # the release sensor's attempt number for that month and file version
CHANGED_SERVICES_TAG = f"{TAG_PREFIX}changed_services"  # services whose file is new or republished
SOURCE_TAG = f"{TAG_PREFIX}source"  # what launched a run outside the sensors, e.g. "demo"
RETRAIN_REASON_TAG = f"{TAG_PREFIX}retrain_reason"  # why a retraining run was requested
RETRAIN_MONTH_TAG = f"{TAG_PREFIX}retrain_month"  # the month whose MAE check failed
RETRAIN_CHAMPION_TAG = f"{TAG_PREFIX}retrain_champion_version"  # the champion that failed it
