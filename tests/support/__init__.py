"""What the tests run against: a real S3 server on loopback (`s3`), a fault-injecting proxy
(`faultproxy`), a TLS stand-in of WML's REST endpoints (`wml_standin`, with the client harness
`wml_harness/`), and the weight-average probe (`ema_probe`). Nothing in `job/` knows of them."""
