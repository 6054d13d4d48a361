"""``python -m catalog_agent``: through the launcher, like the console script."""

from catalog_agent.launcher import main

if __name__ == "__main__":
    main()
