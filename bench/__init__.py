"""The transfer benchmark: catalog-agent against s5cmd, rclone and aws-cli v2."""
