"""`python -m archcheck` and the `archcheck` console script."""


def run() -> None:
    """Entry point. The CLI's imports (typer, rich) load here, so worker processes, which
    import this module as __mp_main__, start without them."""
    from .cli import main
    main()


if __name__ == "__main__":
    run()
