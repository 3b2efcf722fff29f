"""Printing a benchmark's markdown report and saving it for benchmarks/results/."""


def emit(text: str, out: str | None) -> None:
    """Print `text` and, when `out` is given, write it there too."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
