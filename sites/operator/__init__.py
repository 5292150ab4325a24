"""What hospital IT runs: the site folder and its configuration, start and stop, the
server process, publishing data and registering researchers.

Must never run researcher code, and never print secrets.
"""
