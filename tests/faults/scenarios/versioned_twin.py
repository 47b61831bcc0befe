"""The same as `versioned`: a second scenario with the same change point, so that bisect shares its cells."""
import bnmatrix_scenario as bns
import versioned


if __name__ == "__main__":
    bns.main("versioned_twin", versioned.train)
