// pause: the process that holds a pod sandbox's namespaces (the real node's "pause image").
// Kubernetes' own pause is C (build/pause/linux/pause.c) and ships only as a registry image;
// this is the same behaviour in Go, built here without a C toolchain: sleep until SIGINT or
// SIGTERM, and reap zombies when it is PID 1 of a pod that shares its process namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getpid() != 1 {
		os.Stderr.WriteString("Warning: pause should be the first process\n")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		switch sig {
		case syscall.SIGCHLD:
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		default:
			os.Exit(0)
		}
	}
}
