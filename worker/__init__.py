"""proxwatch: the background side (workers, scheduler, gateway, embedded services, CLI)."""
