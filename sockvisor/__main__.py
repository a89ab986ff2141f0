"""`python -m sockvisor` is the same as the `sockvisor` command."""

from sockvisor.cli.main import main

raise SystemExit(main())
