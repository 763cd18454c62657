"""The channel manager: Telegram and Slack chats relayed to workspaces."""
