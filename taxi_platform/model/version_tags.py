"""The names of the tags on a registered ``taxi_fare_model`` version: every writer and every reader uses these.

Writers: the ``fare_model`` run's register and gate steps (:mod:`taxi_platform.model.run_registration`), the
model package (:func:`taxi_platform.model.model_package.code_versions`, also its MLmodel metadata keys), the
gate's MAE cache (:mod:`taxi_platform.model.gate_scoring`) and the shadow verdict
(:func:`taxi_platform.model.registry_records.record_shadow_verdict`). Readers: the gate
(:mod:`taxi_platform.model.gate_rule`), the champion lookup (:mod:`taxi_platform.model.champion_lookup`), the
Bento build and ``fare_service``. The run steps set the shared names (window, validation month, source, gate
outcome) on the MLflow run as well; a version registered outside ``fare_model`` (a sample champion) records its
data source on its run only, where the champion lookup reads it.
"""

from __future__ import annotations

# What fare_model sets on every version it registers: the gate places it by these, monitoring and serving read them.
TRAIN_MONTHS_TAG = "train_months"  # comma list of YYYY-MM
VALIDATION_MONTH_TAG = "validation_month"  # YYYY-MM
VALIDATION_MAE_TAG = "validation_mae"
FAMILY_TAG = "family"
PARTITION_TAG = "partition"  # the Dagster partition key, YYYY-MM-01
DAGSTER_RUN_ID_TAG = "dagster_run_id"
GIT_SHA_TAG = "git_sha"
DATA_SOURCE_TAG = "data_source"  # synthetic | tlc (comma list)
CHECKS_FAILED_TAG = "checks_failed"  # comma list of failed asset checks; '' when all passed
INTERVAL_COVERAGE_TAG = "interval_coverage"  # nominal coverage of its fare ranges; '' without ranges
CONTRACT_TAG = "contract"  # the trip_features contract it was trained on

# What a version records of the code it was built with (also its MLmodel metadata keys).
CODE_TAG = "fare_model_code"
FEATURES_TAG = "features_version"
TRAINING_TAG = "training_version"
STATE_TAG = "state_format"

# A version re-logged from another's fitted state with a newer package (taxi-platform repackage).
REPACKAGED_FROM_TAG = "repackaged_from"  # the source version
RATE_CARD_CHANGES_TAG = "rate_card_changes"  # the rate-card rows it prices with that the source did not

# The hyperparameter search's outcome (only on a version whose run searched: TuningResult.tags).
TUNING_PARAMS_TAG = "tuning.params"
TUNING_BEST_MAE_TAG = "tuning.best_mae"
TUNING_DEFAULT_MAE_TAG = "tuning.default_mae"
TUNING_IMPROVEMENT_TAG = "tuning.improvement"
TUNING_TRIALS_TAG = "tuning.trials"
TUNING_SCORED_ON_TAG = "tuning.scored_on"

# The gate's decision for the version it gated (set on the MLflow run too).
PROMOTED_TAG = "promoted"  # true | false
GATE_REASON_TAG = "gate_reason"
GATE_CHAMPION_VERSION_TAG = "gate_champion_version"
GATE_TOLERANCE_TAG = "gate_tolerance"
GATE_DECISION_TAGS = (PROMOTED_TAG, GATE_REASON_TAG, GATE_CHAMPION_VERSION_TAG, GATE_TOLERANCE_TAG)

# The shadow's verdict (served_quote_accuracy); the gate reads it when require_shadow is on.
SHADOW_VERDICT_TAG = "shadow_verdict"  # pass | fail: the challenger's shadow quotes against the champion's
SHADOW_EVIDENCE_TAG = "shadow_evidence"  # month, quotes compared and both MAEs behind the verdict

# The gate's cache, one tag per evaluation month: "<mae>|<fingerprint>" and "<fingerprint>|<slice json>".
MAE_TAG_PREFIX = "mae."
SLICES_TAG_PREFIX = "slices."
MAX_TAG_VALUE = 5000  # MLflow's limit on a model version tag's value


def mae_tag(month: str) -> str:
    return f"{MAE_TAG_PREFIX}{month[:7]}"


def slices_tag(month: str) -> str:
    return f"{SLICES_TAG_PREFIX}{month[:7]}"
