"""Quotes: validation, the fare service's edge, prediction log and shadow, the Bento build, the canary
comparison and batch scoring."""
