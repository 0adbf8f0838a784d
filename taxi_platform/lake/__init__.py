"""The Parquet lake: local directories or GCS, partitions committed atomically, the Parquet sink."""
