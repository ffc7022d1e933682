"""Federation: this box links to other boxes' buses and offers their services as `peer/service`."""
