module wi-webhook/bench/loadgen

go 1.22
