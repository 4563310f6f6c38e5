"""Channel modules, one per destination type, all behind the ``channels.base.Channel`` interface."""
