package workloadtoken

import "testing"

func TestSplitAudiences(t *testing.T) {
	got := SplitAudiences(" portcullis, ,istio-ca,")
	if len(got) != 2 || got[0] != "portcullis" || got[1] != "istio-ca" {
		t.Errorf("SplitAudiences = %q, want [portcullis istio-ca]", got)
	}
	if SplitAudiences(" , ") != nil {
		t.Error("SplitAudiences of blanks is not empty")
	}
}
