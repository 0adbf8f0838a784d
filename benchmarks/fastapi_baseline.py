"""Baseline for the serving benchmark: the common course recipe, FastAPI + pandas + ``mlflow.pyfunc``.

Loads ``models:/taxi_fare_model@champion`` from the MLflow registry (``MLFLOW_TRACKING_URI``) once per worker,
and prices each request by building a pandas DataFrame and calling the pyfunc's ``predict`` from a plain
``def`` endpoint (FastAPI runs it in its thread pool). Same routes and bodies as the Bento, so one load
generator drives both. No extra validation beyond the pydantic types — this is the recipe as taught.

    MLFLOW_TRACKING_URI=sqlite:///.data/mlflow.db uv run python benchmarks/fastapi_baseline.py --port 8000 --workers 2
"""

from __future__ import annotations

import argparse
import os
from contextlib import asynccontextmanager
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_URI = os.environ.get("BASELINE_MODEL_URI", "models:/taxi_fare_model@champion")
state: dict = {}


class Quote(BaseModel):
    pickup_datetime: str
    pickup_zone: int
    dropoff_zone: int
    passenger_count: int
    service: str


class QuoteBatch(BaseModel):
    quotes: list[Quote]


@asynccontextmanager
async def lifespan(_app: FastAPI):
    model = mlflow.pyfunc.load_model(MODEL_URI)
    state["model"] = model
    # MLflow enforces the registered signature and refuses unsafe casts, so match its numeric column types.
    numpy_types = {"long": "int64", "integer": "int32", "double": "float64", "float": "float32"}
    schema = model.metadata.get_input_schema()
    state["dtypes"] = {
        s.name: numpy_types[s.type.name]
        for s in (schema.inputs if schema else [])
        if s.type.name in numpy_types
    }
    from mlflow import MlflowClient

    name, _, alias = MODEL_URI.removeprefix("models:/").partition("@")
    state["version"] = str(MlflowClient().get_model_version_by_alias(name, alias).version) if alias else ""
    yield
    state.clear()


app = FastAPI(title="taxi fare baseline (FastAPI + pandas + pyfunc)", lifespan=lifespan)


@app.get("/readyz")
def readyz() -> dict:
    return {"ready": "model" in state}


@app.post("/predict")
def predict(quote: Quote) -> dict:
    frame = pd.DataFrame([quote.model_dump()]).astype(state["dtypes"])
    fare = float(state["model"].predict(frame)["fare_amount"].iloc[0])
    return {"fare_amount": round(fare, 2), "currency": "USD", "model_version": state["version"]}


@app.post("/predict_batch")
def predict_batch(batch: QuoteBatch) -> dict:
    frame = pd.DataFrame([q.model_dump() for q in batch.quotes]).astype(state["dtypes"])
    fares = state["model"].predict(frame)["fare_amount"].round(2).tolist()
    return {"predictions": fares, "currency": "USD", "model_version": state["version"]}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "fastapi_baseline:app",
        app_dir=str(Path(__file__).resolve().parent),
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
