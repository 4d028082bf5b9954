"""Operations: the admin listener, metrics, systemd notification, logs and the command line."""
