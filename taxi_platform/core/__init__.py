"""The ground floor: settings (every ``TAXI_*`` variable), months, run tags, SQL helpers and the files the
installed package ships. Imports nothing else of the platform but ``fare_model``'s constants."""
