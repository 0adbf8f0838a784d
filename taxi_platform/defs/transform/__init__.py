"""Transform stage wiring: cleaned_trips and trip_features, and their data-contract checks."""
