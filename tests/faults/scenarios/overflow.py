"""A moving mean of 1e400: valid JSON, a valid schema type, and a number no double holds."""
import _raw


def edit(result):
    result["layers"]["bn"]["moving_mean"] = "<1e400>"
    return result


if __name__ == "__main__":
    _raw.main("overflow", edit)
