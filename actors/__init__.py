"""Ray actors and the supervision runtime they share."""
