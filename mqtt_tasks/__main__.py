"""``python -m mqtt_tasks``: the ``mqtt-tasks`` command group."""

from .cli import main

if __name__ == "__main__":
    main()
