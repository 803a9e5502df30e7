"""Commands of the ``dynamiclrp`` command line, one module each (:mod:`.explain`, :mod:`.demo`); the entry point and
the subcommand table are in :mod:`dynamiclrp.__main__`."""
