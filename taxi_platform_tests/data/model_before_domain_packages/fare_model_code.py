"""The models-from-code script of this fare model version: its own code, shipped as `taxi_fare_model_34cdb50458cd73e4`."""

import mlflow.models

from taxi_fare_model_34cdb50458cd73e4.pyfunc import FareQuoteModel

mlflow.models.set_model(FareQuoteModel.from_code())
