"""What serves HTTP: the JSON API (:mod:`.api`), the dashboard (:mod:`.dashboard`) and the
host-app glue (:mod:`.hosting`)."""
