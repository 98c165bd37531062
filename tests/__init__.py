from core.compiled import drop_stale

# Before any test module imports a compiled module: the suite must test today's sources.
drop_stale()
