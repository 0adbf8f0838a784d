"""The models-from-code script of the registered fare model (MLflow runs it when the model is loaded).

It only names the model class; the fitted state is the model's ``fare_state`` artifact, which
``FareQuoteModel.load_context`` reads. See :mod:`taxi_platform.lib.fare_pyfunc`.
"""

import mlflow.models

from taxi_platform.lib.fare_pyfunc import FareQuoteModel

mlflow.models.set_model(FareQuoteModel.from_code())
