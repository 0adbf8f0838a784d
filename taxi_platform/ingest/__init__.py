"""Getting the TLC's data: the HTTP client, schema eras, monthly releases and the zone lookup."""
