DROP TABLE _realtide_webhooks;
