"""`python -m archcheck` and the `archcheck` console script."""


def run() -> None:
    """Entry point. The CLI's imports (typer, rich) load here, so worker processes, which
    import this module as __mp_main__, start without them."""
    import signal

    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)  # first thing: a stop during start-up is clean too
    from .cli import main
    main()


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (cron's or systemd's stop) ends the run as Ctrl-C does: manifest saved, exit 3."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    run()
