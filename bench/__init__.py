"""The transfer benchmark (issue 8): catalog-agent against s5cmd, rclone and aws-cli v2."""
