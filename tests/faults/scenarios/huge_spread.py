"""A batch of [1e200, -1e200]: each number a double holds, its variance none."""
import _raw


def edit(result):
    result["layers"]["bn"]["data"] = {"values": [1e200, -1e200]}
    return result


if __name__ == "__main__":
    _raw.main("huge_spread", edit)
