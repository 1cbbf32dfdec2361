"""PSG data layer: readers -> preprocessing -> store."""
