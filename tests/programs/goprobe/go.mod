module tether.test/goprobe

go 1.19
