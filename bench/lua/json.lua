-- wrk script: POST a KServe v2 JSON infer request (body file in BENCH_BODY).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench_setup_request("application/json")
