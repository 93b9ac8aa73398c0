"""Expected delay of one more request at a pod: the "waves" formula, written once."""


def expected_delay_ms(app_ms: float, load: float, concurrency: int | None) -> float:
    """Time (ms) a new request is expected to take at a pod holding ``load`` requests.

    With a container concurrency ``c > 0`` a request starts at once while a slot
    is free, else waits for ``(load + 1) / c`` service times; with none (0 or
    None: unlimited, or unknown) requests queue one behind the other.
    """
    if concurrency:
        waves = (load + 1.0) / concurrency
        return app_ms * (waves if waves > 1.0 else 1.0)
    return app_ms * (load + 1.0)
