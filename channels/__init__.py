"""Channels: templates, providers (SMTP, Aliyun SMS, webhooks, WeCom, DingTalk), deliveries,
tracking, unsubscribes and send-time policies. Other packages call `channels.service.send`."""
