package kubecluster

// DownWithHook is Down with a hook called before it releases the lock (for tests).
var DownWithHook = down
