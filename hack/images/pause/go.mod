module mlops-operator/hack/images/pause

go 1.21
