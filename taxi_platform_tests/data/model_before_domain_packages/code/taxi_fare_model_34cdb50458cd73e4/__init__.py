"""Everything a registered fare model version runs: features, design matrix, pair statistics, fare ranges, the
compiled predictors and the MLflow pyfunc.

The package is shipped whole with every version under its own name (``taxi_fare_model_<digest>``, see
:mod:`taxi_platform.lib.model_package`), so its modules import only each other, relatively, and third-party
libraries: never another ``taxi_platform`` module.
"""
