"""`python -m worker.embedded.standin`: the stand-in as its own process."""

from worker.embedded.standin.server import main

main()
