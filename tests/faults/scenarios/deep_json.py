"""An `extra` observation nested 100,000 levels deep (200 KB, within the 1 MiB a result line may hold)."""
import _raw


def edit(result):
    result["extra"]["deep"] = "<deep>"
    return result


if __name__ == "__main__":
    _raw.main("deep_json", edit)
