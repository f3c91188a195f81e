"""OpenNebula hooks for sites that prefer oned's own hook execution (onehem) to the
subscriber daemon: ``onehook`` templates for the same triggers (:mod:`.templates`),
``onestorpool hooks install`` registering them through XML-RPC, and ``onestorpool hooks
run ROUTE``, the command they execute, which calls the subscriber's handlers once."""
