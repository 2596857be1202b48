-- wrk script for the publish benchmark (BENCHMARKS.md): POST one small event.
wrk.method = "POST"
wrk.body = '{"category":"bench","data":"hello world"}'
wrk.headers["Content-Type"] = "application/json"
