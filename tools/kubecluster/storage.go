package kubecluster

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Storage: there is no provisioner, so the cluster has a default StorageClass (StorageClassName)
// of pre-made hostPath PersistentVolumes: PersistentVolumeCount volumes of PersistentVolumeSize,
// directories under /var/lib/kubecluster-volumes of the node (the cluster's directory). A PVC
// of that class (or of none) binds to one when its pod is scheduled.
const (
	StorageClassName      = "standard"
	PersistentVolumeCount = 8
	PersistentVolumeSize  = "10Gi"
	volumesDir            = "/var/lib/kubecluster-volumes"
)

func (c *Cluster) createStorage(ctx context.Context) error {
	_, err := c.client.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: StorageClassName,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"}},
		Provisioner:       "kubernetes.io/no-provisioner",
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		ReclaimPolicy:     ptr.To(corev1.PersistentVolumeReclaimRetain),
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	for i := range PersistentVolumeCount {
		name := fmt.Sprintf("kubecluster-pv-%d", i)
		_, err := c.client.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeSpec{
				StorageClassName:              StorageClassName,
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(PersistentVolumeSize)},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{
					Path: volumesDir + "/" + name, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
	}
	return nil
}
