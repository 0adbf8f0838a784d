"""How the champion does: drift data, report and worker, the trend, served-quote accuracy and the
retraining decision."""
